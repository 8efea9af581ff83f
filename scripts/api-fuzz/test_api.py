"""Property-based tests of the HTTP API, generated from the node's own /openapi.json
(schemathesis), against a standalone kindex-node that scripts/api-fuzz.sh started.

For every generated request (valid and invalid, schemathesis' positive and negative modes):
- never a 5xx;
- every error answer is JSON in the documented shape {"error": {"code", "message"}};
- the answer conforms to the document (status, content type, schema);
- data the document calls invalid is refused (4xx);
- a refused request changes nothing: the Raft applied index (every write goes through
  the log) and the live count are the same before and after.

Environment: KINDEX_URL (http://127.0.0.1:PORT), KINDEX_FUZZ_EXAMPLES (per operation and
mode), KINDEX_FUZZ_STATS (file the case count is written to).
"""

import json
import os
import re

import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

URL = os.environ["KINDEX_URL"]
EXAMPLES = int(os.environ.get("KINDEX_FUZZ_EXAMPLES", "40"))
STATS = os.environ.get("KINDEX_FUZZ_STATS")

schema = schemathesis.openapi.from_url(f"{URL}/openapi.json")
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=EXAMPLES,
)

CASES = {"total": 0, "refused": 0}
SESSION = requests.Session()


def state():
    """(applied log index, live count): what a refused request must not change."""
    metrics = SESSION.get(f"{URL}/metrics", timeout=10).text
    m = re.search(r"^kindex_raft_applied_index (\d+)", metrics, re.M)
    assert m, "kindex_raft_applied_index missing from /metrics"
    count = SESSION.get(f"{URL}/v1/indexes/default/count", timeout=10).json()["count"]
    return int(m.group(1)), count


def record():
    if STATS:
        with open(STATS, "w") as f:
            json.dump(CASES, f)


@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api(case):
    # Aim most requests at the index that exists, so bodies are checked, not just the name.
    if "index" in (case.path_parameters or {}) and CASES["total"] % 4 != 3:
        case.path_parameters["index"] = "default"
    before = state()
    response = case.call(base_url=URL, session=SESSION, timeout=30)
    CASES["total"] += 1
    record()
    status = response.status_code
    assert status < 500, f"{status}: {response.text[:500]}"
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            negative_data_rejection,
        ],
    )
    if status >= 400:
        CASES["refused"] += 1
        record()
        ctype = response.headers.get("content-type") or [""]
        ctype = ctype[0] if isinstance(ctype, list) else ctype
        assert ctype.startswith("application/json"), f"{status} as {ctype!r}: {response.text[:300]}"
        body = response.json()
        assert isinstance(body.get("error", {}).get("code"), str), body
        assert isinstance(body["error"].get("message"), str), body
        after = state()
        assert after == before, (
            f"refused request ({status}: {body['error']['message'][:200]}) changed "
            f"(applied index, count) from {before} to {after}"
        )
