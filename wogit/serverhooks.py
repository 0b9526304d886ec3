"""Hooks in the registry repository: git's ``pre-receive`` and the operator's validators.

``install`` puts the project's ``hooks/pre-receive`` (a thin script that runs
``python -m wogit hook pre-receive``) into the repository; an operator's own
``pre-receive`` found there is kept as ``pre-receive.d/00-original`` and still
runs, after ours, like every executable in ``pre-receive.d/``.

``pre_receive`` is that hook: the rules of ``wogit.rules`` for every pushed ref,
then the operator's validators on what the push brings.

Validators are executables the operator puts in the repository's ``hooks/``:
``wo-validate-map FILE``, ``wo-validate-config FILE`` and ``wo-validate-tag``, with
context in ``WO_*`` variables.  Missing or not executable: no check.  A non-zero
exit refuses the content (HOOK_REJECTED, its stderr's first lines as the
message); one that runs longer than the timeout is killed with its whole process
group and refuses too.  They run for HTTP uploads and git pushes alike.
"""

from __future__ import annotations

import importlib.resources
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from wogit import errors, names, objects, rules

MARKER = "wogit-managed-hook"
VALIDATORS = {names.MAP: "wo-validate-map", names.CONFIG: "wo-validate-config", "tag": "wo-validate-tag"}
TIMEOUT_KEY = "wogit.hookTimeout"  # seconds, in the repository's git config: one value for both paths
DEFAULT_TIMEOUT = 60.0
MESSAGE_LINES, MESSAGE_CHARS = 10, 2000


# -- installing ------------------------------------------------------------------------------

def install(git_dir: str) -> list[str]:
    """Install (or refresh) the registry's hooks in ``git_dir``; idempotent. Returns what changed."""
    hooks = os.path.join(git_dir, "hooks")
    chained = os.path.join(hooks, "pre-receive.d")
    os.makedirs(chained, exist_ok=True)
    target = os.path.join(hooks, "pre-receive")
    done = []
    if os.path.lexists(target) and MARKER not in _read(target):
        kept = os.path.join(chained, "00-original")
        os.replace(target, kept)
        done.append(f"kept the existing pre-receive hook as {kept}")
    text = template().replace("@PYTHON@", shlex.quote(sys.executable))
    if not os.path.exists(target) or _read(target) != text:
        temp = target + ".wogit-tmp"
        with open(temp, "w") as file:
            file.write(text)
        os.chmod(temp, 0o755)
        os.replace(temp, target)
        done.append(f"installed {target}")
    return done


def set_timeout(git_dir: str, timeout: float) -> None:
    """Keep the validators' timeout in the repository's config, where pushes (the hook) read it too."""
    if configured_timeout(git_dir) != timeout:
        subprocess.run(["git", "--git-dir", git_dir, "config", TIMEOUT_KEY, str(timeout)], check=True)


def template() -> str:
    return importlib.resources.files("wogit.hooks").joinpath("pre-receive").read_text()


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as file:
            return file.read()
    except OSError:
        return ""


def configured_timeout(git_dir: str) -> float:
    result = subprocess.run(["git", "--git-dir", git_dir, "config", "--get", TIMEOUT_KEY],
                            capture_output=True, text=True, check=False)
    try:
        return float(result.stdout.strip()) if result.returncode == 0 else DEFAULT_TIMEOUT
    except ValueError:
        return DEFAULT_TIMEOUT


# -- the pre-receive hook ----------------------------------------------------------------------

def pre_receive(git_dir: str, stdin: bytes) -> int:
    """Check a push (git's ``old new ref`` lines); print why each refused ref is refused; 0 = accept."""
    changes = [rules.Change(ref, old, new) for old, new, ref in
               (line.split(" ", 2) for line in stdin.decode("utf-8", "replace").splitlines() if line)]
    view = rules.GitView(git_dir)
    _freshen_tags(git_dir, changes, view)  # before the rules look their digests up
    problems = rules.check(changes, view)
    if not problems:
        problems = _validate_pushed(git_dir, changes, view)
    for problem in problems:
        print(f"wogit: refusing {problem.ref}: {problem.msg}", file=sys.stderr)
    if problems:
        print(f"wogit: push refused as a whole ({len(problems)} of {len(changes)} refs break the rules; "
              "see docs/git.md)", file=sys.stderr)
        return 1
    return _chain(git_dir, stdin)


def _freshen_tags(git_dir: str, changes: list[rules.Change], view: rules.GitView) -> None:
    """Touch the stored blobs that pushed tags name, as the API's tag creation does: a ``wogit gc``
    running meanwhile then keeps them (and indexes them again), though this push does not carry
    them and its tags do not exist yet (wogit.maintenance)."""
    objects_dir = os.path.join(git_dir, "objects")
    for change in changes:
        if change.new != rules.ZERO and isinstance(names.parse_ref(change.ref), names.TagName) \
                and view.kind(change.new) == "commit":
            for entry in view.tree(view.commit(change.new).tree):
                objects.touch(objects_dir, entry.oid)


def _validate_pushed(git_dir: str, changes: list[rules.Change], view: rules.GitView) -> list[rules.Rejection]:
    timeout = configured_timeout(git_dir)
    user = os.environ.get("REMOTE_USER", "")
    problems = []
    for change in changes:
        name = names.parse_ref(change.ref)
        try:
            if isinstance(name, names.BlobName) and change.new != rules.ZERO:
                if has_validator(git_dir, name.kind):
                    with _blob_file(git_dir, rules.indexed_blob(view, change.new, name.kind)) as path:
                        validate(git_dir, name.kind, timeout, path,
                                 WO_DIGEST=name.digest, WO_USER=user)
            elif isinstance(name, names.TagName) and change.new != rules.ZERO and has_validator(git_dir, "tag"):
                fields = rules.tag_digests(view.commit(change.new).message)
                validate(git_dir, "tag", timeout, None, WO_REPOSITORY=name.repository, WO_MAP=name.map,
                         WO_TAG=name.tag, WO_MAP_DIGEST=fields["map_digest"],
                         WO_CONFIG_DIGEST=fields["config_digest"], WO_USER=user)
        except errors.WogitError as exc:
            problems.append(rules.Rejection(change.ref, exc.msg))
    return problems


@contextmanager
def _blob_file(git_dir: str, oid: str) -> Iterator[str]:
    fd, path = tempfile.mkstemp(prefix="wogit-validate-", dir=git_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            subprocess.run(["git", "--git-dir", git_dir, "cat-file", "blob", oid], stdout=out, check=True)
        yield path
    finally:
        os.unlink(path)


def _chain(git_dir: str, stdin: bytes) -> int:
    chained = os.path.join(git_dir, "hooks", "pre-receive.d")
    for name in sorted(os.listdir(chained)) if os.path.isdir(chained) else []:
        path = os.path.join(chained, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            code = subprocess.run([path], input=stdin, check=False).returncode
            if code != 0:
                print(f"wogit: push refused by pre-receive.d/{name} (exit status {code})", file=sys.stderr)
                return code
    return 0


# -- the operator's validators -------------------------------------------------------------------

def has_validator(git_dir: str, kind: str) -> bool:
    path = os.path.join(git_dir, "hooks", VALIDATORS[kind])
    return os.path.isfile(path) and os.access(path, os.X_OK)


def validate(git_dir: str, kind: str, timeout: float, file: str | None, **context: str) -> None:
    """Run the validator for ``kind`` (if any) on ``file``; HOOK_REJECTED if it refuses or hangs."""
    if not has_validator(git_dir, kind):
        return
    name = VALIDATORS[kind]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WO_", "HTTP_"))}
    env.update({k: "" if v is None else v for k, v in context.items()})  # WO_USER is "" when anonymous
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen([os.path.join(git_dir, "hooks", name), *([file] if file else [])],
                                cwd=git_dir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise errors.HOOK_REJECTED(f"{name} did not finish within {timeout:g} s and was stopped") from None
        finally:
            _kill_group(proc)  # children it left behind
        if code == 0:
            return
        stderr.seek(0)
        said = stderr.read(MESSAGE_CHARS * 2).decode("utf-8", "replace").strip().splitlines()[:MESSAGE_LINES]
        message = "\n".join(said)[:MESSAGE_CHARS]
        raise errors.HOOK_REJECTED(message or f"{name} refused it (exit status {code})")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
