"""Whether a Ray Tune experiment folder that an earlier, interrupted run left can be resumed.

Tune writes ``experiment_state-<session>.json`` (every trial, ``trial_data``) in place, next to
its searcher's and callbacks' state of the same session, and ``Tuner.restore`` reads the newest.
Two states an interruption leaves cannot be restored: a state without trials (the stop signal
came after Tune installed its handler but before its loop created the first trial; Tune then
saves the empty state; restoring it fails in ``TuneController._restore_trials``, and Tune then
starts the experiment again without its search space, which ``tuner.pkl`` does not keep: one
trial with an empty config), and a truncated one (a kill during the write). ``resumable``
removes such states (with their session's other files), so that Tune restores the newest good
one, or clears the folder when none is left, so that the caller starts the experiment again:
nothing was finished in it.

A third comes from checkpoints: Tune deletes a trial's older checkpoint (``num_to_keep``) as
soon as it registers a newer one, but saves its state only every few seconds, so a driver killed
in between leaves a state naming a checkpoint that is gone, and the restored trial fails ("Could
not recover from checkpoint as it does not exist on storage anymore"). The trial's newest
checkpoint is then moved to the path the state names, and the trial resumes from it (the
trainable reads its step from the checkpoint, not from Tune's count).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ray import tune

log = logging.getLogger(__name__)

STATE = "experiment_state-"


def resumable(path: str | Path) -> bool:
    """Whether ``Tuner.restore`` can resume the experiment at ``path`` (its newest readable
    state lists a trial). States it cannot restore are removed first; a folder left with
    nothing to resume is removed whole, and ``False`` returned."""
    path = Path(path)
    if not path.exists():
        return False
    if tune.Tuner.can_restore(str(path)):
        for state in sorted(path.glob(f"{STATE}*.json"), reverse=True):
            if _trials(state):
                _mend_checkpoints(path, state)
                return True
            session = state.name[len(STATE) : -len(".json")]
            log.info("experiment %s: state %s has no trial to resume; removed", path, state.name)
            for stale in path.glob(f"*-{session}.*"):  # its searcher's and callbacks' state too
                if stale.is_file():
                    stale.unlink()
    log.info("experiment %s: nothing to resume; started again", path)
    shutil.rmtree(path)
    return False


def _trials(state: Path) -> int:
    """How many trials the experiment state ``state`` lists (0 when it cannot be read)."""
    try:
        return len(json.loads(state.read_text())["trial_data"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _mend_checkpoints(path: Path, state: Path) -> None:
    """Move each trial's newest checkpoint to the path ``state`` names as its latest where that
    one was deleted after the state was saved (see the module's docstring)."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata  # how Tune reads it back

    for _, metadata in json.loads(state.read_text())["trial_data"]:
        try:
            manager = _TrainingRunMetadata.from_json_state(metadata).checkpoint_manager
            named = Path(manager.latest_checkpoint_result.checkpoint.path)
        except Exception:  # no checkpoint yet, or a state this Ray writes otherwise
            continue
        folder = path / named.parent.name  # where the experiment is now
        if (folder / named.name).exists():
            continue
        found = sorted(folder.glob("checkpoint_*"))
        if found:
            found[-1].rename(folder / named.name)
            log.info("experiment %s: %s resumes from %s", path, folder.name, found[-1].name)
