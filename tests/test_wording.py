"""The project's text speaks of the project and its users: not of how it was made (work sittings, who lent which
machine, tickets). Tracked text files are read; published records are data and are left out."""

import re
import subprocess

from conftest import REPO

# word -> what to say instead
PROCESS_WORDS = {
    r"\bsessions?\b": "a study run in parts, a test run",
    r"\blent\b": "a GPU machine",
    r"\bthe issue\b|\bissue's\b|\bissues\b": "the goal, the question",
    r"\bsittings?\b": "a study run in parts",
    r"\bclosing note\b": "docs/results.md",
    r"\bdiary\b": "docs/",
}
# code whose spelling is not ours to choose
ALLOWED = (r'scope="session"', r"start_new_session", r"-p no:cacheprovider")
TEXT = (".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".ipynb", ".json", ".cfg", "Makefile", "run")


def tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return [REPO / n for n in names if n.endswith(TEXT) and "/records/" not in n and n != "tests/test_wording.py"]


def test_no_process_wording_in_tracked_files():
    files = tracked_text_files()
    assert any(f.name == "README.md" for f in files)
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for allowed in ALLOWED:
                line = line.replace(allowed, "")
            for pattern, instead in PROCESS_WORDS.items():
                if re.search(pattern, line, re.I):
                    found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]} (say: {instead})")
    assert not found, "\n".join(found)


def test_the_word_list_catches_what_it_should():
    bad = ["run it across sessions", "on a lent H100", "the issue's goal", "a study longer than one sitting"]
    assert all(any(re.search(p, text, re.I) for p in PROCESS_WORDS) for text in bad)
    assert not any(re.search(p, "a study run in parts on a GPU machine", re.I) for p in PROCESS_WORDS)
