"""`htpasswd` for the tests: Apache's own when installed, else a stand-in that writes the same files.

The access-control tests need user files in the format Apache's `htpasswd` writes (bcrypt `$2y$`,
`$apr1$` MD5, `{SHA}`, plain) and edited the way it edits them: in place, the same inode, bcrypt
lines of equal length. apache2-utils is not on every machine (CI starts from a clean one), so
without it this module does the same with Python; `test_the_stand_in_writes_what_htpasswd_reads`
checks the two against each other wherever the real one is installed. Tests about the real tool
itself are marked `needs_real_htpasswd`.
"""

import base64
import hashlib
import os
import shutil
import subprocess

import bcrypt
import pytest

REAL = shutil.which("htpasswd")
needs_real_htpasswd = pytest.mark.skipif(REAL is None, reason="htpasswd missing (apache2-utils)")


def htpasswd(*args: str) -> None:
    """Run `htpasswd` with these arguments (the subset: -c -B -C N -b -D -m -s -p)."""
    if REAL:
        subprocess.run([REAL, *args], check=True, capture_output=True)
    else:
        _stand_in(list(args))


def htpasswd_verifies(path, name: str, password: str) -> bool:
    """`htpasswd -v -b PATH NAME PASSWORD` succeeds."""
    if REAL:
        return subprocess.run([REAL, "-v", "-b", str(path), name, password], capture_output=True).returncode == 0
    for line in open(path, encoding="utf-8").read().splitlines():
        user, _, stored = line.partition(":")
        if user == name:
            return _matches(stored, password.encode("utf-8"))
    return False


def _stand_in(args: list[str]) -> None:
    flags = {a for a in args if a.startswith("-") and a != "-C"}
    cost = int(args[args.index("-C") + 1]) if "-C" in args else 5
    operands = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "-C")]
    path, name = operands[0], operands[1]
    lines = [] if "-c" in flags or not os.path.exists(path) else open(path, encoding="utf-8").read().splitlines()
    kept = [line for line in lines if line.partition(":")[0] != name]
    if "-D" not in flags:
        line = f"{name}:{_hash(operands[2].encode('utf-8'), flags, cost)}"
        index = next((i for i, old in enumerate(lines) if old.partition(":")[0] == name), len(lines))
        kept.insert(index, line)
    mode = "r+" if os.path.exists(path) and "-c" not in flags else "w"
    with open(path, mode, encoding="utf-8") as file:  # in place, as htpasswd does: same inode
        file.write("".join(line + "\n" for line in kept))
        file.truncate()


def _hash(password: bytes, flags: set[str], cost: int) -> str:
    if "-s" in flags:
        return "{SHA}" + base64.b64encode(hashlib.sha1(password).digest()).decode()
    if "-p" in flags:
        return password.decode("utf-8")
    if "-m" in flags:
        return apr1(password, base64.b64encode(os.urandom(6)).decode().replace("+", ".")[:8])
    return "$2y$" + bcrypt.hashpw(password[:72], bcrypt.gensalt(cost)).decode()[4:]


def _matches(stored: str, password: bytes) -> bool:
    if stored.startswith("$2"):
        return bcrypt.checkpw(password[:72], ("$2b$" + stored[4:]).encode())
    if stored.startswith("$apr1$"):
        return apr1(password, stored.split("$")[2]) == stored
    if stored.startswith("{SHA}"):
        return _hash(password, {"-s"}, 0) == stored
    return stored == password.decode("utf-8")


ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def apr1(password: bytes, salt: str) -> str:
    """Apache's MD5 crypt (`htpasswd -m`)."""
    salt_bytes = salt.encode()
    final = hashlib.md5(password + salt_bytes + password).digest()
    context = password + b"$apr1$" + salt_bytes
    for left in range(len(password), 0, -16):
        context += final[:min(16, left)]
    bits = len(password)
    while bits:
        context += b"\0" if bits & 1 else password[:1]
        bits >>= 1
    final = hashlib.md5(context).digest()
    for i in range(1000):
        step = password if i & 1 else final
        if i % 3:
            step += salt_bytes
        if i % 7:
            step += password
        step += final if i & 1 else password
        final = hashlib.md5(step).digest()
    encoded = ""
    for a, b, c in ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)):
        encoded += _to64((final[a] << 16) | (final[b] << 8) | final[c], 4)
    encoded += _to64(final[11], 2)
    return f"$apr1${salt}${encoded}"


def _to64(value: int, count: int) -> str:
    out = ""
    for _ in range(count):
        out += ITOA64[value & 0x3F]
        value >>= 6
    return out
