"""The layering the folders promise: core/ is plain Python in stage order, demo/ is reached from one place."""

import ast
from pathlib import Path

import avdag

PACKAGE = Path(avdag.__file__).parent
STAGES = ["common", "ingest", "captioning", "training", "judging", "reporting"]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def test_core_never_imports_dagster_or_the_layers_above_it():
    offenders = []
    for path in _modules("core"):
        for name in _imports(path):
            if name.split(".")[0] == "dagster" or name.startswith(
                ("avdag.defs", "avdag.resources", "avdag.definitions", "avdag.demo", "avdag.settings", "avdag.cli")
            ):
                offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert offenders == []


def test_a_stage_imports_only_itself_and_earlier_stages():
    offenders = []
    for stage_index, stage in enumerate(STAGES):
        allowed = {f"avdag.core.{s}" for s in STAGES[: stage_index + 1]}
        for path in _modules(f"core/{stage}"):
            for name in _imports(path):
                if name.startswith("avdag.core.") and ".".join(name.split(".")[:3]) not in allowed:
                    offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert offenders == []


def test_only_the_captioner_resource_and_the_cli_reach_the_demo_package():
    reach = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "demo" not in path.relative_to(PACKAGE).parts[:1]
        and any(name.startswith("avdag.demo") for name in _imports(path))
    )
    assert reach == ["cli.py", "resources/captioner.py"]


def test_only_settings_reads_avdag_and_openai_variables():
    readers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(
            marker in path.read_text(encoding="utf-8")
            for marker in ('environ.get("AVDAG_', 'environ.get("OPENAI_', 'environ["AVDAG_', 'getenv("AVDAG_')
        )
    )
    assert readers == ["settings.py"]
