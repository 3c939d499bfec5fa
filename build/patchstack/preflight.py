"""Checks that run before anything is installed: `make` runs this file with the system Python
(`python3 build/patchstack/preflight.py`), ahead of creating a virtual environment, and the tool
imports the same functions.

Only the standard library, and syntax an old Python can parse: its first job is to tell a user
whose Python is too old which one to use, instead of pip failing half-way through an install.
"""

import os
import re
import sys

# The oldest Python the tool runs on; pyproject.toml's requires-python says the same (a test
# holds the two together).
MIN_PYTHON = (3, 11)

# Docker's reference grammar, as far as a tag given to this project can use it: an optional
# registry host[:port]/, lower-case path components, and an optional :tag of at most 128
# characters (docker/distribution's reference package).
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)"
_NAME = r"%s?%s(?:/%s)*" % (_HOST, _COMPONENT, _COMPONENT)
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_TAG_ONLY = re.compile(r"^%s$" % _TAG)
_REFERENCE = re.compile(r"^%s:%s$" % (_NAME, _TAG))
_IMAGE = re.compile(r"^%s(?::%s)?(?:@sha256:[0-9a-f]{64})?$" % (_NAME, _TAG))


def is_image_reference(value):
    """Whether `value` is an image Docker can name: [host[:port]/]path[:tag][@sha256:digest]."""
    return _IMAGE.match(value) is not None


def python_problem(version=None):
    """None when this Python is new enough, else the message that says which one to use."""
    v = tuple(version or sys.version_info[:3])
    if v[:2] >= MIN_PYTHON:
        return None
    have = ".".join(str(x) for x in v)
    need = ".".join(str(x) for x in MIN_PYTHON)
    return ("Python %s is too old: the tool needs %s or newer (%s). Nothing was installed.\n"
            "  what to do: install Python %s+ and give it to make, e.g. make PYTHON=python%s <target>"
            % (have, need, sys.executable, need, need))


def tag_problem(tag):
    """None when `tag` is a tag this project can give an image (TAG=...: either TAG alone, for the
    image's own repository, or NAME:TAG), else the message that says why not."""
    if _TAG_ONLY.match(tag) or _REFERENCE.match(tag):
        return None
    why = "it has white space" if re.search(r"\s", tag) else (
        "it is empty" if not tag else "it is not a Docker reference")
    return ("TAG=%r is not a valid image tag: %s.\n"
            "  what to do: TAG=<tag> (letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-') "
            "or TAG=<name>:<tag> with a lower-case name, e.g. TAG=mine or TAG=registry.example.com/team/gemma4:v1"
            % (tag, why))


# The label on the Docker images a clone makes for its own checks (the smoke images and their base,
# the Slurm test images): `make distclean` removes those that carry its own clone's value, and no
# other clone's.
CLONE_LABEL = "io.github.gemma4-stack.clone"


def clone_id(root=None):
    """This clone's identity: a hash of the real path of its top folder (the one holding build/)."""
    import hashlib

    top = os.path.realpath(root or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    return hashlib.sha256(top.encode("utf-8")).hexdigest()[:16]


def unknown_message(unknown, known):
    """The refusal of NAME=VALUE settings make does not read, with the nearest known name for each."""
    import difflib

    parts = []
    for name in unknown:
        near = difflib.get_close_matches(name, [k for k in known if "%" not in k], n=1, cutoff=0.75)
        parts.append(name + (" (did you mean %s?)" % near[0] if near else ""))
    return ("unknown setting%s %s: nothing was run. `make help` lists the targets' settings and the "
            "image's build settings" % ("s" if len(unknown) > 1 else "", ", ".join(parts)))


def main(argv):
    if argv == ["clone-id"]:
        print(clone_id())
        return 0
    if argv == ["clone-label"]:  # what `make distclean` filters Docker's images by
        print("%s=%s" % (CLONE_LABEL, clone_id()))
        return 0
    if argv[:1] == ["unknown"] and "--" in argv:
        i = argv.index("--")
        print(unknown_message(argv[1:i], argv[i + 1:]))
        return 0
    if argv:
        sys.stderr.write("usage: preflight.py [clone-id | clone-label | unknown NAME... -- KNOWN...]\n")
        return 2
    problems = []
    p = python_problem()
    if p:
        problems.append(p)
    if "TAG" in os.environ:
        t = tag_problem(os.environ["TAG"])
        if t:
            problems.append(t)
    for p in problems:
        sys.stderr.write("error: %s\n" % p)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
