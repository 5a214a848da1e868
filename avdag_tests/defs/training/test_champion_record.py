"""Where the champion's checkpoint folder is read from, for records made before and after its own key."""

import json

from avdag.defs.training.promotion import _champion_path


def test_the_champion_folder_comes_from_its_own_key():
    assert (
        _champion_path({"checkpoint_path": "/ckpt/sft-1", "path": "/assets/checkpoint_in_service.json"})
        == "/ckpt/sft-1"
    )


def test_an_older_record_is_read_from_the_file_the_io_manager_named(tmp_path):
    record = tmp_path / "checkpoint_in_service.json"
    record.write_text(json.dumps({"checkpoint_id": "c1", "path": "/ckpt/sft-1"}))
    assert _champion_path({"path": str(record)}) == "/ckpt/sft-1"
