"""A separate writer process for the concurrency test: accepts N messages, prints ticket numbers."""

import asyncio
import sys

from factories import make_message
from paidan.db import make_engine
from router.intake import Intake


async def main(url: str, worker: int, n: int) -> None:
    intake = Intake(make_engine(url), max_batch=16)
    mine = [make_message(f"w{worker}-{i}", email=f"w{worker}c{i % 5}@example.com") for i in range(n)]
    shared = [make_message(f"w0-{i}", email=f"w0c{i % 5}@example.com") for i in range(10)]
    receipts = await asyncio.gather(*(intake.accept(m) for m in mine + shared))
    intake.close()
    print("\n".join(r.ticket_number for r in receipts))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
