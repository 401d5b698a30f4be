"""Settings for the whole test session.

The suite writes tokenizer caches for the many GGUF files it makes (one entry per file, keyed by
the file's identity): those go to a temporary ``$GADGET_CACHE`` that is removed at the end, not into
the user's ``~/.cache/gadget``. The default models are the exception: the temporary cache's
``models/`` is the user's own, so a suite run does not fetch or convert them again (and a user who
already has them keeps them). Set here, at import, so the CLI subprocesses the tests start inherit it.
"""
import os
import shutil
import tempfile
from pathlib import Path

from gadget.tokenizer import cache_dir

_user_models = cache_dir() / 'models'
_session_cache = Path(tempfile.mkdtemp(prefix='gadget-test-cache-'))
_user_models.mkdir(parents=True, exist_ok=True)
(_session_cache / 'models').symlink_to(_user_models, target_is_directory=True)
os.environ['GADGET_CACHE'] = str(_session_cache)


def pytest_unconfigure(config):
    shutil.rmtree(_session_cache, ignore_errors=True)
