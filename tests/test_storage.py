"""Atomic writes: a stop signal that arrives during a checkpoint write is delivered after it, not inside it."""

import signal

import pytest
import torch

from harness.core.storage import atomic_torch_save


class SignalsWhilePickled:
    """Sends this process SIGUSR2 while torch.save is writing it (pickling runs its __reduce__)."""

    def __reduce__(self):
        signal.raise_signal(signal.SIGUSR2)
        return (dict, ())


def test_a_requeue_signal_during_a_checkpoint_write_exits_after_the_whole_file_is_written(tmp_path):
    def requeue_and_exit(signum, frame):  # what submitit's handler does on a time-out: requeue, then sys.exit
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, requeue_and_exit)
    try:
        with pytest.raises(SystemExit):
            atomic_torch_save({"weights": torch.arange(10.0), "extra": SignalsWhilePickled()}, tmp_path / "checkpoint.pt")
    finally:
        signal.signal(signal.SIGUSR2, previous)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert torch.equal(saved["weights"], torch.arange(10.0)) and saved["extra"] == {}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind
