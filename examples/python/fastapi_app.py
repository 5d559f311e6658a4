"""A FastAPI payments endpoint made safe to retry with an Idempotency-Key
header, through resilience_sidecar.asgi.IdempotencyMiddleware.

    pip install "resilience-sidecar[fastapi]" uvicorn
    make run &                                   # a sidecar on 127.0.0.1:50051
    python examples/python/fastapi_app.py --port 8000
    curl -i -X POST localhost:8000/payments -H 'Idempotency-Key: order-42' \\
         -H 'Content-Type: application/json' -d '{"order": "42", "amount": 1999}'

Send the same request again with the same key: the response is the stored
one (same charge id, `Idempotent-Replayed: true`) and nothing is charged
twice (GET /ledger). The same key with another body is 422; a retry while
the first request still runs is 409 with Retry-After; with the sidecar down
it is 503 and nothing runs. The sidecar's address: $SIDECAR_ADDR, else
127.0.0.1:50051.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from contextlib import asynccontextmanager
from typing import AsyncIterator, Dict, List, Optional

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from resilience_sidecar.aio import AsyncClient
from resilience_sidecar.asgi import IdempotencyMiddleware

_sidecar: Optional[AsyncClient] = None


def sidecar() -> AsyncClient:
    """Called by the middleware once, inside the server's event loop."""
    global _sidecar
    _sidecar = AsyncClient()  # $SIDECAR_ADDR, else 127.0.0.1:50051
    return _sidecar


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    if _sidecar is not None:
        await _sidecar.close()


app = FastAPI(title="payments", lifespan=lifespan)
app.add_middleware(IdempotencyMiddleware, client=sidecar, lease_ttl=30, retention=24 * 3600)

#: The "payment provider": every charge it ever made.
ledger: List[Dict[str, object]] = []
_ids = itertools.count(1)


class Charge(BaseModel):
    order: str = Field(min_length=1)
    amount: int = Field(gt=0)
    #: Seconds the provider takes (to see a concurrent retry get 409).
    delay: float = Field(default=0, ge=0, le=10)


@app.post("/payments", status_code=201)
async def charge(body: Charge) -> JSONResponse:
    if body.delay:
        await asyncio.sleep(body.delay)  # the provider's latency
    charge_id = f"ch_{next(_ids)}"
    ledger.append({"charge_id": charge_id, "order": body.order, "amount": body.amount})
    return JSONResponse(
        {"charge_id": charge_id, "order": body.order, "amount": body.amount},
        status_code=201,
        headers={"Location": f"/payments/{charge_id}"},
    )


@app.get("/ledger")
async def get_ledger() -> Dict[str, object]:
    return {"charges": len(ledger), "entries": ledger}


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
