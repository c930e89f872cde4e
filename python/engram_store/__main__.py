"""python -m engram_store: engramctl's everyday commands for Python users.

    python -m engram_store [--address=HOST:PORT] health
    python -m engram_store list
    python -m engram_store describe LAYER
    python -m engram_store lookup LAYER IDS...   (one [1, 1, H] row of ids)
    python -m engram_store populate LAYER HEAD0.npy HEAD1.npy ... [--dtype=T]
    python -m engram_store remove LAYER [--force]
"""
import argparse
import os
import sys

import numpy as np

import engram_store


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engram_store")
    parser.add_argument("--address", default=os.environ.get(
        "ENGRAM_ADDRESS", "127.0.0.1:50051"))
    parser.add_argument("--timeout_s", type=float, default=60)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("health")
    sub.add_parser("list")
    p = sub.add_parser("describe")
    p.add_argument("layer", type=int)
    p = sub.add_parser("lookup")
    p.add_argument("layer", type=int)
    p.add_argument("ids", type=int, nargs="+")
    p = sub.add_parser("populate")
    p.add_argument("layer", type=int)
    p.add_argument("files", nargs="+")
    p.add_argument("--dtype")
    p.add_argument("--replace", action="store_true")
    p = sub.add_parser("remove")
    p.add_argument("layer", type=int)
    p.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        client = engram_store.Client(args.address, timeout_s=args.timeout_s)
        if args.command == "health":
            ok = client.health()
            print("SERVING" if ok else "NOT_SERVING")
            return 0 if ok else 1
        if args.command == "list":
            layers = client.list_layers()
            for info in layers:
                print(info)
            if not layers:
                print("no layers")
        elif args.command == "describe":
            print(client.describe(args.layer))
        elif args.command == "lookup":
            ids = np.array(args.ids, dtype=np.int64).reshape(1, 1, -1)
            rows = client.lookup(args.layer, ids)
            for h, row in enumerate(rows[0, 0]):
                print(f"head {h} row {ids[0, 0, h]}: {row.tolist()}")
        elif args.command == "populate":
            tables = [np.load(f, mmap_mode="r") for f in args.files]
            print(client.populate(args.layer, tables, dtype=args.dtype,
                                  replace=args.replace))
        elif args.command == "remove":
            print(f"removed {client.remove(args.layer, args.force)} tables")
    except engram_store.Error as e:
        print(f"engram_store: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
