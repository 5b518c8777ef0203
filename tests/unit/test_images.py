"""Checks the container images' Dockerfiles by parsing them, since no Docker engine runs where the tests do.

The images build from the repository root: ``Dockerfile`` (the operator) and ``trainer-image/Dockerfile``, whose
default (last) target is the trainer and whose ``server`` target is the model server. The parser below understands
what these files use: comments, line continuations, stages (one built FROM an earlier stage inherits its
instructions), and the exec (JSON) and shell forms of instructions.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
OPERATOR_DOCKERFILE = REPO_ROOT / "Dockerfile"
TRAINER_DOCKERFILE = REPO_ROOT / "trainer-image" / "Dockerfile"
DOCKERFILES = pytest.mark.parametrize(
    "dockerfile", [OPERATOR_DOCKERFILE, TRAINER_DOCKERFILE], ids=["operator", "trainer"]
)
TRAINER_STACK = ("torch", "transformers", "trainer", "optional-dependencies")
#: Every image: its Dockerfile and build target (None: the last stage, what a build without --target makes).
IMAGES = pytest.mark.parametrize("dockerfile, build_target", [
    (OPERATOR_DOCKERFILE, None), (TRAINER_DOCKERFILE, None), (TRAINER_DOCKERFILE, "server"),
], ids=["operator", "trainer", "server"])


@dataclass
class Instruction:
    keyword: str
    """Upper-cased, e.g. ``COPY``."""
    arguments: str
    """Everything after the keyword, continuations joined."""

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form instruction (``ENTRYPOINT ["kaizen"]``); fails on the shell form."""
        assert self.arguments.startswith("["), f"{self.keyword} {self.arguments} should use the exec (JSON) form"
        value = json.loads(self.arguments)
        assert isinstance(value, list) and all(isinstance(item, str) for item in value)
        return value

    def flags_and_words(self) -> tuple[dict[str, str], list[str]]:
        """``--name=value`` flags and the remaining words, e.g. of ``COPY --from=build /a /b``."""
        words = self.exec_form() if self.arguments.startswith("[") else shlex.split(self.arguments)
        flags = {}
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        return flags, words


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [instruction for instruction in self.instructions if instruction.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"the stage FROM {self.image} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """The stage's ``ENV`` variables, in either form (``ENV A=1 B=2`` or the legacy ``ENV A 1``)."""
        variables = {}
        for instruction in self.all("ENV"):
            words = shlex.split(instruction.arguments)
            if "=" not in words[0]:
                variables[words[0]] = instruction.arguments.split(None, 1)[1]
                continue
            for word in words:
                key, _, value = word.partition("=")
                variables[key] = value
        return variables


def logical_lines(text: str) -> list[str]:
    """Joins continued lines (a trailing backslash), dropping comment lines, as BuildKit does, even mid-instruction."""
    lines, pending = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, f"the last instruction ends with a line continuation: {pending!r}"
    return lines


def parse(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            _, words = instruction.flags_and_words()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            parent = next((stage for stage in stages if stage.name == words[0]), None)
            # A stage built FROM an earlier one starts with what that one set (user, environment, files, ...).
            stages.append(Stage(image=words[0], name=name, instructions=list(parent.instructions) if parent else []))
        else:
            assert stages, f"{path}: {instruction.keyword} before the first FROM"
            stages[-1].instructions.append(instruction)
    assert stages, f"{path} has no FROM"
    return stages


def target(dockerfile: Path, name: str | None) -> Stage:
    """The stage ``docker build --target NAME`` builds (the last one without a name)."""
    stages = parse(dockerfile)
    if name is None:
        return stages[-1]
    found = [stage for stage in stages if stage.name == name]
    assert found, f"{dockerfile.name} has no stage named {name}"
    return found[0]


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored_by_dockerignore(source: str) -> bool:
    """Whether a path (or a folder above it) is left out of the build context.

    Understands the patterns ``.dockerignore`` uses: paths from the context root with wildcards, and ``**/name`` for a
    name at any depth; exceptions (``!``) are not used and so not handled.
    """
    parts = PurePosixPath(source.strip("/")).parts
    path_and_parents = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    for pattern in dockerignore_patterns():
        assert not pattern.startswith("!"), "this test does not understand exceptions in .dockerignore"
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase(part, pattern.removeprefix("**/")) for part in parts):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern.strip("/")) for prefix in path_and_parents):
            return True
    return False


@IMAGES
def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Path, build_target: str | None) -> None:
    # Numeric, so that the kubelet can enforce runAsNonRoot without looking the name up in the image.
    user = target(dockerfile, build_target).last("USER").arguments
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"{dockerfile.name}: USER {user} should be a numeric, non-zero uid"
    assert not gid or (gid.isdigit() and int(gid) != 0), f"{dockerfile.name}: USER {user} should have a non-root gid"


@DOCKERFILES
def test_base_images_are_pinned_to_a_tag(dockerfile: Path) -> None:
    stages = parse(dockerfile)
    stage_names = {stage.name for stage in stages if stage.name}
    for stage in stages:
        if stage.image in stage_names:
            continue
        # The tag follows the last "/", since a registry host may carry a port (registry:5000/python:3.11).
        tag = stage.image.rsplit("/", 1)[-1].partition(":")[2]
        assert "@sha256:" in stage.image or (tag and tag != "latest"), f"FROM {stage.image} should name a tag"


@DOCKERFILES
def test_copy_sources_exist_in_the_build_context(dockerfile: Path) -> None:
    for stage in parse(dockerfile):
        for instruction in stage.all("COPY") + stage.all("ADD"):
            flags, words = instruction.flags_and_words()
            if "from" in flags:
                continue
            for source in words[:-1]:
                assert list(REPO_ROOT.glob(source.rstrip("/"))), f"{dockerfile.name}: COPY source {source} is missing"
                assert not ignored_by_dockerignore(source), f"{dockerfile.name}: {source} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    for path in (".git", ".venv", ".pytest_cache", "operator/kaizen/__pycache__", "operator/kaizen_operator.egg-info"):
        assert ignored_by_dockerignore(path), f".dockerignore should exclude {path}"


def test_operator_image_leaves_out_the_trainer_stack() -> None:
    for stage in parse(OPERATOR_DOCKERFILE):
        for run in stage.all("RUN"):
            mentioned = [word for word in TRAINER_STACK if word in run.arguments]
            assert not mentioned, f"the operator image's RUN {run.arguments!r} installs the trainer stack"
    # The image installs [project].dependencies: they must not pull the training stack in either.
    for requirement in pyproject()["project"]["dependencies"]:
        assert not requirement.startswith(("torch", "transformers")), f"{requirement} belongs in the trainer extra"


def test_trainer_image_installs_the_trainer_contract_and_extras_without_the_operator(tmp_path: Path) -> None:
    """The requirements the image installs, made by its own command from pyproject.toml: the trainer and s3 extras and
    the trainer contract's dependencies at the project's pins, never kopf or kubernetes (whose python-dateutil pin
    botocore cannot share); the package itself goes in without its dependencies."""
    runs = [run.arguments for stage in parse(TRAINER_DOCKERFILE) for run in stage.all("RUN")]
    [generate] = [run for run in runs if "> requirements.txt" in run]
    command = shlex.split(generate.split("> requirements.txt", 1)[0])
    assert command[:2] == ["python", "-c"]
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    out = subprocess.run([sys.executable, "-c", command[2]], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.split()
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    assert set(extras["trainer"]) | set(extras["s3"]) <= set(out)
    assert {r.split("==")[0] for r in out} >= {"torch", "transformers", "peft", "s3fs", "pydantic", "aiohttp"}
    assert not [r for r in out if r.startswith(("kopf", "kubernetes"))], out
    assert set(out) - set(extras["trainer"]) - set(extras["s3"]) <= set(project["dependencies"])
    assert any("pip install --no-deps ." in run for run in runs)


def test_operator_entrypoint_is_the_kaizen_operator_command() -> None:
    final = parse(OPERATOR_DOCKERFILE)[-1]
    entrypoint, command = final.last("ENTRYPOINT").exec_form(), final.last("CMD").exec_form()
    assert entrypoint == ["kaizen"]
    target = pyproject()["project"]["scripts"]["kaizen"]
    module_name, _, function_name = target.partition(":")
    assert callable(getattr(importlib.import_module(module_name), function_name)), f"{target} is not callable"

    # Imported here, so that a broken CLI fails this test, not the collection of this module.
    from kaizen.cli import build_parser

    arguments = build_parser().parse_args(command)
    assert arguments.command == "operator", f"CMD {command} should run `kaizen operator`"


def test_trainer_entrypoint_runs_the_copied_trainer_package() -> None:
    final = parse(TRAINER_DOCKERFILE)[-1]
    assert final.last("ENTRYPOINT").exec_form() == ["python", "-m", "kaizen_trainer"]
    _package_copied_onto_pythonpath(final, "kaizen_trainer")
    assert final.last("WORKDIR").arguments == "/workspace"


def _package_copied_onto_pythonpath(stage: Stage, package: str) -> None:
    """``trainer-image/PACKAGE`` is copied once, into a folder on the stage's PYTHONPATH."""
    assert (REPO_ROOT / "trainer-image" / package / "__main__.py").is_file()
    destinations = []
    for copy in stage.all("COPY"):
        flags, words = copy.flags_and_words()
        if "from" not in flags and words[0].rstrip("/") == f"trainer-image/{package}":
            destinations.append(words[-1].rstrip("/"))
    assert len(destinations) == 1, f"the stage should COPY trainer-image/{package}/ once"
    assert Path(destinations[0]).name == package, f"{package} is copied to {destinations[0]}, not a folder of its name"
    package_parent = str(Path(destinations[0]).parent)
    assert package_parent in stage.env().get("PYTHONPATH", "").split(":"), (
        f"{package} is copied to {destinations[0]}, but {package_parent} is not on PYTHONPATH"
    )


def test_server_target_runs_the_model_server_on_port_8080() -> None:
    server = target(TRAINER_DOCKERFILE, "server")
    assert server.last("ENTRYPOINT").exec_form() == ["python", "-m", "kaizen_server"]
    # The server imports kaizen_trainer.modeling (the shared prompt format), so both packages are in the image.
    _package_copied_onto_pythonpath(server, "kaizen_server")
    _package_copied_onto_pythonpath(server, "kaizen_trainer")
    assert server.last("EXPOSE").arguments == "8080"
    assert server.env().get("PORT", "8080") == "8080", "EXPOSE and the port the server listens on should agree"
    # Nothing the server writes lands on the root filesystem (HOME, and so any cache, is the workspace).
    assert server.env()["HOME"] == "/workspace" and server.env()["PYTHONDONTWRITEBYTECODE"] == "1"
    assert server.name != parse(TRAINER_DOCKERFILE)[-1].name, "a build without --target should stay the trainer"


def test_trainer_image_leaves_out_the_server() -> None:
    trainer = target(TRAINER_DOCKERFILE, None)
    copied = [copy.flags_and_words()[1][0] for copy in trainer.all("COPY")]
    assert not [source for source in copied if "kaizen_server" in source], copied
