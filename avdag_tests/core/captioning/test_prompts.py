"""Tests for avdag.core.captioning.prompts and the project's prompts/ folder: loading, fallbacks, hashing, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from avdag.core.captioning.prompts import PROJECT_PROMPTS_DIR, PromptError, PromptSet, load_prompt_set
from avdag.core.common import labels

REPO_PROMPTS = Path(__file__).resolve().parents[3] / "prompts"
PROJECT_FILES = ("system_prompt.txt", "user_prompt.txt", "judge_system.txt", "judge_user.txt", "questions.json")
CAPTION_FILES = ("system_prompt.txt", "user_prompt.txt")
JUDGE_FILES = ("judge_system.txt", "judge_user.txt", "questions.json")


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A private copy of the project folder, safe to edit."""
    folder = tmp_path / "project_prompts"
    shutil.copytree(REPO_PROMPTS, folder)
    return folder


@pytest.fixture
def recipe_folder(tmp_path: Path) -> Path:
    """A folder shaped like the recipe's: caption prompts and score_question.json only."""
    folder = tmp_path / "recipe"
    folder.mkdir()
    (folder / "system_prompt.txt").write_text("You are a careful dashcam annotator.\n", encoding="utf-8")
    (folder / "user_prompt.txt").write_text("Describe the weather and the lighting as JSON.\n", encoding="utf-8")
    (folder / "score_question.json").write_text(
        json.dumps({"weather": "Which weather?", "lighting": "Which light?"}), encoding="utf-8"
    )
    return folder


def edit(path: Path) -> None:
    if path.suffix == ".json":
        questions = json.loads(path.read_text(encoding="utf-8"))
        first = next(iter(questions))
        questions[first] += " (edited)"
        path.write_text(json.dumps(questions), encoding="utf-8")
    else:
        path.write_text(path.read_text(encoding="utf-8") + "\nOne more sentence.\n", encoding="utf-8")


# --- the project folder ---------------------------------------------------------------------------


def test_project_prompts_dir_is_the_repository_folder():
    """The package's prompts are the repository's top-level folder (a link in a checkout, a copy in a wheel)."""
    assert PROJECT_PROMPTS_DIR.resolve() == REPO_PROMPTS.resolve()
    assert all((PROJECT_PROMPTS_DIR / name).is_file() for name in PROJECT_FILES)


def test_project_folder_loads_with_five_non_empty_parts():
    prompts = load_prompt_set()
    assert isinstance(prompts, PromptSet)
    for part in (prompts.system_prompt, prompts.user_prompt, prompts.judge_system, prompts.judge_user):
        assert isinstance(part, str) and part.strip()
    assert prompts.questions and all(isinstance(q, str) and q.strip() for q in prompts.questions.values())
    assert prompts.system_prompt == (REPO_PROMPTS / "system_prompt.txt").read_text(encoding="utf-8")
    assert prompts.judge_user == (REPO_PROMPTS / "judge_user.txt").read_text(encoding="utf-8")
    assert prompts.questions == json.loads((REPO_PROMPTS / "questions.json").read_text(encoding="utf-8"))


def test_project_questions_cover_exactly_the_fifteen_fields():
    questions = load_prompt_set().questions
    assert set(questions) <= set(labels.FIELDS)
    assert set(questions) == set(labels.FIELDS)
    assert len(questions) == 15


def test_project_judge_user_prompt_has_the_placeholders():
    judge_user = load_prompt_set().judge_user
    for placeholder in ("{question}", "{human_answer}", "{model_answer}"):
        assert placeholder in judge_user


def test_default_and_explicit_project_folder_agree():
    assert load_prompt_set() == load_prompt_set(REPO_PROMPTS)
    assert load_prompt_set(None) == load_prompt_set(str(REPO_PROMPTS))


def test_project_sources_all_point_into_the_folder():
    sources = load_prompt_set().sources
    assert set(sources) == {"system_prompt.txt", "user_prompt.txt", "judge_system.txt", "judge_user.txt", "questions"}
    assert sources["questions"] == str(REPO_PROMPTS / "questions.json")
    for name in ("system_prompt.txt", "user_prompt.txt", "judge_system.txt", "judge_user.txt"):
        assert sources[name] == str(REPO_PROMPTS / name)


# --- hashes ---------------------------------------------------------------------------------------


def test_hashes_are_stable_across_loads(project_copy):
    first, second = load_prompt_set(project_copy), load_prompt_set(project_copy)
    assert first.caption_hash == second.caption_hash
    assert first.judge_hash == second.judge_hash
    assert first.caption_hash != first.judge_hash
    assert len(first.caption_hash) == 16 and int(first.caption_hash, 16) >= 0
    # a copy in another place hashes the same: the hash is of contents, not paths
    assert load_prompt_set(REPO_PROMPTS).caption_hash == first.caption_hash
    assert load_prompt_set(REPO_PROMPTS).judge_hash == first.judge_hash


@pytest.mark.parametrize("name", CAPTION_FILES)
def test_caption_file_change_changes_only_caption_hash(project_copy, name):
    before = load_prompt_set(project_copy, fallback=project_copy)
    edit(project_copy / name)
    after = load_prompt_set(project_copy, fallback=project_copy)
    assert after.caption_hash != before.caption_hash
    assert after.judge_hash == before.judge_hash


@pytest.mark.parametrize("name", JUDGE_FILES)
def test_judge_file_change_changes_only_judge_hash(project_copy, name):
    before = load_prompt_set(project_copy, fallback=project_copy)
    edit(project_copy / name)
    after = load_prompt_set(project_copy, fallback=project_copy)
    assert after.judge_hash != before.judge_hash
    assert after.caption_hash == before.caption_hash


def test_question_key_order_does_not_change_judge_hash(project_copy):
    before = load_prompt_set(project_copy, fallback=project_copy)
    path = project_copy / "questions.json"
    questions = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(dict(reversed(list(questions.items())))), encoding="utf-8")
    assert load_prompt_set(project_copy, fallback=project_copy).judge_hash == before.judge_hash


def test_moving_text_between_caption_prompts_changes_hash(project_copy):
    """The two prompts are hashed as separate parts, not as one concatenation."""
    (project_copy / "system_prompt.txt").write_text("AB", encoding="utf-8")
    (project_copy / "user_prompt.txt").write_text("C", encoding="utf-8")
    one = load_prompt_set(project_copy, fallback=project_copy).caption_hash
    (project_copy / "system_prompt.txt").write_text("A", encoding="utf-8")
    (project_copy / "user_prompt.txt").write_text("BC", encoding="utf-8")
    assert load_prompt_set(project_copy, fallback=project_copy).caption_hash != one


# --- a recipe-shaped folder -----------------------------------------------------------------------


def test_recipe_folder_loads_unchanged_with_project_judge_prompts(recipe_folder):
    prompts = load_prompt_set(recipe_folder)
    assert prompts.system_prompt == "You are a careful dashcam annotator.\n"
    assert prompts.user_prompt == "Describe the weather and the lighting as JSON.\n"
    assert prompts.questions == {"weather": "Which weather?", "lighting": "Which light?"}
    assert prompts.judge_system == (REPO_PROMPTS / "judge_system.txt").read_text(encoding="utf-8")
    assert prompts.judge_user == (REPO_PROMPTS / "judge_user.txt").read_text(encoding="utf-8")


def test_recipe_folder_sources_say_where_each_part_came_from(recipe_folder):
    sources = load_prompt_set(recipe_folder).sources
    assert sources["system_prompt.txt"] == str(recipe_folder / "system_prompt.txt")
    assert sources["user_prompt.txt"] == str(recipe_folder / "user_prompt.txt")
    assert sources["questions"] == str(recipe_folder / "score_question.json")
    assert sources["judge_system.txt"] == str(REPO_PROMPTS / "judge_system.txt")
    assert sources["judge_user.txt"] == str(REPO_PROMPTS / "judge_user.txt")


def test_recipe_folder_without_questions_takes_project_questions(recipe_folder):
    (recipe_folder / "score_question.json").unlink()
    prompts = load_prompt_set(recipe_folder)
    assert prompts.questions == json.loads((REPO_PROMPTS / "questions.json").read_text(encoding="utf-8"))
    assert prompts.sources["questions"] == str(REPO_PROMPTS / "questions.json")


def test_folder_judge_prompt_overrides_fallback(recipe_folder):
    (recipe_folder / "judge_system.txt").write_text("Judge strictly.", encoding="utf-8")
    prompts = load_prompt_set(recipe_folder)
    assert prompts.judge_system == "Judge strictly."
    assert prompts.sources["judge_system.txt"] == str(recipe_folder / "judge_system.txt")
    assert prompts.sources["judge_user.txt"] == str(REPO_PROMPTS / "judge_user.txt")


def test_questions_json_preferred_over_score_question_json(recipe_folder):
    (recipe_folder / "questions.json").write_text(json.dumps({"weather": "Preferred?"}), encoding="utf-8")
    prompts = load_prompt_set(recipe_folder)
    assert prompts.questions == {"weather": "Preferred?"}
    assert prompts.sources["questions"] == str(recipe_folder / "questions.json")


def test_recipe_judge_hash_differs_from_project_only_by_questions(recipe_folder):
    recipe, project = load_prompt_set(recipe_folder), load_prompt_set()
    assert recipe.caption_hash != project.caption_hash
    assert recipe.judge_hash != project.judge_hash  # different questions
    (recipe_folder / "score_question.json").unlink()
    assert load_prompt_set(recipe_folder).judge_hash == project.judge_hash


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CAPTION_FILES)
def test_missing_caption_prompt_names_the_file(recipe_folder, name):
    (recipe_folder / name).unlink()
    with pytest.raises(PromptError, match=name.replace(".", r"\.")) as info:
        load_prompt_set(recipe_folder)
    assert str(recipe_folder / name) in str(info.value)


def test_prompt_error_is_a_value_error():
    assert issubclass(PromptError, ValueError)


def test_missing_folder_raises_prompt_error(tmp_path):
    with pytest.raises(PromptError, match="does not exist"):
        load_prompt_set(tmp_path / "nope")


def test_empty_prompt_file_names_the_file(recipe_folder):
    (recipe_folder / "user_prompt.txt").write_text("  \n\t", encoding="utf-8")
    with pytest.raises(PromptError, match="empty") as info:
        load_prompt_set(recipe_folder)
    assert str(recipe_folder / "user_prompt.txt") in str(info.value)


def test_invalid_questions_json_names_the_file(recipe_folder):
    (recipe_folder / "score_question.json").write_text('{"weather": "Which weather?",', encoding="utf-8")
    with pytest.raises(PromptError, match="not valid JSON") as info:
        load_prompt_set(recipe_folder)
    assert str(recipe_folder / "score_question.json") in str(info.value)


@pytest.mark.parametrize("content", ['["weather", "lighting"]', '{"weather": 3}', '"just a string"'])
def test_wrongly_shaped_questions_name_the_file(recipe_folder, content):
    (recipe_folder / "score_question.json").write_text(content, encoding="utf-8")
    with pytest.raises(PromptError) as info:
        load_prompt_set(recipe_folder)
    assert str(recipe_folder / "score_question.json") in str(info.value)


def test_question_for_unknown_field_raises(recipe_folder):
    (recipe_folder / "score_question.json").write_text(
        json.dumps({"weather": "Which weather?", "wheather": "Typo?"}), encoding="utf-8"
    )
    with pytest.raises(PromptError, match="wheather") as info:
        load_prompt_set(recipe_folder)
    assert "score_question.json" in str(info.value)


def test_no_questions_anywhere_raises(tmp_path, recipe_folder):
    (recipe_folder / "score_question.json").unlink()
    empty_fallback = tmp_path / "fallback"
    shutil.copytree(REPO_PROMPTS, empty_fallback)
    (empty_fallback / "questions.json").unlink()
    with pytest.raises(PromptError, match="no judge questions"):
        load_prompt_set(recipe_folder, fallback=empty_fallback)
