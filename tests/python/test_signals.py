"""A signal in the middle of MaskSet.save() leaves no temporary file: SIGINT is Python's own (the
save finishes, then KeyboardInterrupt), SIGTERM is handled by the module, which removes the
temporary file and lets the process die of the signal (import sparsa installs that handler)."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import sparsa

# The child imports the same sparsa as this process, whatever folder it runs in.
ENV = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(sparsa.__file__))))

SAVER = """
import sparsa
masks = sparsa.compile("heads 4\\nattend = window(256) | global(first(64)) | random(3, seed = h)", n=1 << 19)
print("ready", flush=True)
while True:
    masks.save("out.npz")  # a few tenths of a second each: a signal almost always lands inside one
"""


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, -signal.SIGINT, "KeyboardInterrupt"),
                                             (signal.SIGTERM, -signal.SIGTERM, "")])
def test_a_signal_during_save_leaves_no_temporary_file(tmp_path, sig, code, said):
    for trial in range(3):  # without the handler, SIGTERM leaves a file in most trials
        folder = tmp_path / str(trial)
        folder.mkdir()
        p = subprocess.Popen([sys.executable, "-c", SAVER], cwd=folder, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        time.sleep(0.2 + random.random() * 0.5)
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        assert p.returncode == code, err
        assert said in err
        assert sorted(f.name for f in folder.iterdir()) in ([], ["out.npz"]), "a temporary file was left"
