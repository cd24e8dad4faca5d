import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def pytest_asyncio_loop_factories(config, item):
    """Every async test (tests/test_aio.py) runs on asyncio's own event loop and on uvloop's."""
    import asyncio

    import uvloop

    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


#: ktcluster.aio needs Python 3.11 (asyncio.timeout): its own tests are not collected before
collect_ignore = [] if sys.version_info >= (3, 11) else ["test_aio.py"]
