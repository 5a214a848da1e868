"""Reading cosmos-rl's console output: the excerpts are shaped like cosmos-rl 0.4.x's logger, the SFT
worker's step lines, torchrun's per-rank error prefixes and the launcher's verdict on a replica."""

# Log lines are kept as printed: long, and `INFO - ` before an export message that starts with "\n\n".
# ruff: noqa: E501, W291

import textwrap

from avdag.core.training.cosmos_rl.run_log import RunLog, export_step, unfinished_reason

FINISHED = """\
[cosmos] 2026-12-02 10:00:01,100 - cosmos - INFO - Launching process with command: torchrun --nproc-per-node 8 ...
[cosmos] 2026-12-02 10:01:10,200 - cosmos - INFO - Training epoch 1/2
[cosmos] 2026-12-02 10:01:20,300 - cosmos - INFO - Step: 1/4, Loss: 1.52340, Grad norm: 3.21000, Iteration time: 9.80s, optimizer/lr_0: 1.00000e-06
[cosmos] 2026-12-02 10:01:30,400 - cosmos - INFO - Step: 2/4, Loss: 1.20000, Grad norm: 2.10000, Iteration time: 9.70s
[cosmos] 2026-12-02 10:01:31,000 - cosmos - INFO - [Policy] Step: 2, checkpoint saved successfully at /job/outputs/checkpoints/step_2.
[cosmos] 2026-12-02 10:01:32,000 - cosmos - INFO - Prepare to exporting safetensors to /job/outputs/safetensors/step_2.incomplete-ab12 at rank 0
[cosmos] 2026-12-02 10:01:40,000 - cosmos - INFO - 

Exported safetensors to /job/outputs/safetensors/step_2


/usr/lib/python3/site-packages/torch/utils/checkpoint.py:87: UserWarning: None of the inputs have requires_grad=True.
[cosmos] 2026-12-02 10:01:50,500 - cosmos - INFO - Step: 3/4, Loss: 0.98000, Grad norm: 1.50000, Iteration time: 9.60s
[cosmos] 2026-12-02 10:02:00,600 - cosmos - INFO - Step: 4/4, Loss: 8.1e-01, Grad norm: 1.40000, Iteration time: 9.60s
[cosmos] 2026-12-02 10:02:10,000 - cosmos - INFO - 

Exported safetensors to /job/outputs/safetensors/step_4


[cosmos] 2026-12-02 10:02:11,000 - cosmos - INFO - Process 4242 completed (rc=0)
"""

# A rank runs out of memory after step 3 of 4; the launcher logs it and the controller ends cleanly.
REPLICA_CRASH = (
    FINISHED.split("[cosmos] 2026-12-02 10:02:00,600")[0]
    + "".join(
        textwrap.dedent(f"""\
        [rank{rank}]: Traceback (most recent call last):
        [rank{rank}]:   File "/opt/cosmos_rl/policy/worker/sft_worker.py", line 1013, in main_loop
        [rank{rank}]:     report_data = self.trainer.step_training(
        [rank{rank}]:   File "/opt/cosmos_rl/policy/trainer/llm_trainer/sft_trainer.py", line 402, in step_training
        [rank{rank}]:     loss.backward()
        [rank{rank}]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU {rank} has a total capacity of 79.10 GiB
        """)
        for rank in range(8)
    )
    + textwrap.dedent("""\
    W1202 10:02:05.000000 4243 torch/distributed/elastic/multiprocessing/api.py:897] Sending process 4245 closing signal SIGTERM
    E1202 10:02:06.000000 4243 torch/distributed/elastic/multiprocessing/api.py:869] failed (exitcode: 1) local_rank: 0 (pid: 4244) of binary: /usr/bin/python
    Traceback (most recent call last):
      File "/usr/local/bin/torchrun", line 8, in <module>
        sys.exit(main())
    torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
    ============================================================
    cosmos_rl.policy.train FAILED
    ------------------------------------------------------------
    Root Cause (first observed failure):
    [0]:
      rank      : 0 (local_rank: 0)
      exitcode  : 1 (pid: 4244)
    ============================================================
    [cosmos] 2026-12-02 10:02:07,000 - cosmos - ERROR - Process 4242 failed with return code 1
    [cosmos] 2026-12-02 10:02:09,000 - cosmos - INFO - Process 4241 completed (rc=0)
    """)
)


def read(text: str) -> tuple[RunLog, list]:
    run, events = RunLog(), []
    for line in text.splitlines():
        if event := run.feed(line):
            events.append(event)
    return run, events


def test_a_finished_run_reaches_its_total_and_its_last_export_is_the_final_one():
    run, events = read(FINISHED)
    assert events == [(1, 4, 1.5234), (2, 4, 1.2), (3, 4, 0.98), (4, 4, 0.81)]
    assert run.losses == [(1, 1.5234), (2, 1.2), (3, 0.98), (4, 0.81)]
    assert run.finished and run.last_step_text() == "4/4"
    assert run.exported == "/job/outputs/safetensors/step_4"
    assert unfinished_reason(run, run.exported) is None
    assert run.errors.lines() == []  # a UserWarning is not an error


def test_an_intermediate_export_of_a_finished_run_is_refused():
    run, _ = read(FINISHED)
    assert "the export found is step 2, not the final step 4" in unfinished_reason(
        run, "/job/outputs/safetensors/step_2"
    )
    assert "unrecognised" in unfinished_reason(run, "/job/outputs/safetensors/final")


def test_a_replica_crash_stops_at_its_last_step_and_keeps_one_copy_of_each_error_line():
    run, _ = read(REPLICA_CRASH)
    assert not run.finished and run.last_step == 3 and run.total_steps == 4
    assert run.exported == "/job/outputs/safetensors/step_2"
    assert unfinished_reason(run, run.exported) == "training stopped before its final step"
    errors = run.errors.lines()
    assert errors[0] == "[rank0]: Traceback (most recent call last):"
    assert errors[1].startswith("[rank0]: torch.OutOfMemoryError: CUDA out of memory")
    assert sum("OutOfMemoryError" in line for line in errors) == 8  # each names its GPU: distinct lines
    assert sum("Traceback" in line for line in errors) == 1  # the same on every rank, and torchrun's
    assert any("failed (exitcode: 1)" in line for line in errors)
    assert any("ChildFailedError" in line for line in errors)
    assert errors[-1].endswith("Process 4242 failed with return code 1")
    assert not any("SIGTERM" in line or "File " in line or "Step:" in line for line in errors)


def test_long_error_output_keeps_the_first_and_the_last_lines():
    run, _ = read("\n".join(f"ValueError: case {i}" for i in range(40)))
    lines = run.errors.lines()
    assert lines[0] == "ValueError: case 0" and lines[14] == "ValueError: case 14"
    assert lines[15] == "… 20 more error lines …"
    assert lines[16:] == [f"ValueError: case {i}" for i in range(35, 40)]


def test_a_run_with_no_step_line_is_unfinished_and_a_nan_loss_still_counts_as_a_step():
    run, _ = read("[cosmos] 2026-12-02 10:00:01,100 - cosmos - ERROR - No GPUs available\n")
    assert not run.finished and run.last_step_text().startswith("none")
    assert unfinished_reason(run, None) == "training stopped before its final step"
    assert run.errors.lines() == ["[cosmos] 2026-12-02 10:00:01,100 - cosmos - ERROR - No GPUs available"]
    run, events = read("Step: 7/7, Loss: nan, Grad norm: nan, Iteration time: 1.00s")
    assert run.finished and events[0][:2] == (7, 7) and events[0][2] != events[0][2]


def test_export_step_reads_cosmos_rls_folder_names():
    assert export_step("/job/outputs/safetensors/step_25") == 25
    assert export_step("outputs/safetensors/step_25/") == 25
    assert export_step("/job/outputs/safetensors/step_25.incomplete-ab12") is None
