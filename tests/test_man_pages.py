"""
The man pages say what C{--help} says: every default an option has in
C{--help} is the one its man page entry gives.
"""

import os
import re

import pytest

from livepeer_tx.orchestrator import tap as orchestratorTap
from livepeer_tx.transcoder import tap as transcoderTap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def manEntries(name):
    """
    The C{.TP} entries of a man page's OPTIONS section, each as its tag line
    and its text, with C{\\-} read as C{-}.
    """
    with open(os.path.join(ROOT, "man", f"livepeer-{name}.1")) as f:
        page = f.read().replace("\\-", "-")
    options = page.split("\n.SH OPTIONS\n", 1)[1].split("\n.SH ", 1)[0]
    entries = []
    for block in options.split("\n.TP\n")[1:]:
        tag, _, text = block.partition("\n")
        entries.append((tag, text))
    return entries


def entryOf(entries, option):
    """
    The entry whose tag names C{--option}, and whether the tag names others.
    """
    for tag, text in entries:
        names = re.findall(r"--([A-Za-z]+)", tag)
        if option in names:
            return text, len(names) > 1
    raise AssertionError(f"--{option} has no entry of its own in OPTIONS")


@pytest.mark.parametrize("name,tap", [("orchestrator", orchestratorTap), ("transcoder", transcoderTap)])
def test_defaultsInHelpAreTheManPages(name, tap):
    """
    For each option with a default, its entry states that value: as
    C{Default: <value>} (or the value as a word) in an entry of its own, as
    C{<option> <value>} in an entry shared by several options.
    """
    entries = manEntries(name)
    wrong = []
    for long, short, default, *rest in tap.Options.optParameters:
        if default is None:
            continue
        text, shared = entryOf(entries, long)
        text = " ".join(text.replace("\n.B ", " ").replace("\n", " ").split())
        if shared:
            found = re.search(rf"\b{re.escape(long)} {re.escape(default)}\b", text)
        else:
            found = re.search(rf"(?<![\w.]){re.escape(default)}(?!\w|\.\d)", text)
        if not found:
            wrong.append((long, default))
    assert wrong == []
