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
