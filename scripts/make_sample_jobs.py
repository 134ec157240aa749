#!/usr/bin/env python3
"""Writes a sample input for `mesa run`: long documents from ../shared/text as JSONL.

    python3 scripts/make_sample_jobs.py [--shared ../shared] [--out sample_jobs.jsonl]

Four documents of about 2k, 4k, 6k and 8k tokens (TinyStories and Alice in Wonderland),
cut at paragraph ends, plus one question-answering line ("task": "qa"). Token counts
are estimated from characters (--chars-per-token: about 2 for the tiny TinyStories
vocabularies, about 4 for Llama-class tokenizers). Python standard library only.
"""
import argparse
import json
import os
import sys


def read_text(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def excerpt(text, start, chars):
    """About `chars` characters from `start`, beginning and ending at paragraph breaks."""
    if start > 0:
        brk = text.find("\n\n", start)
        start = brk + 2 if brk >= 0 else start
    end = min(len(text), start + chars)
    brk = text.rfind("\n\n", start, end)
    if brk > start + chars // 2:
        end = brk
    return text[start:end].strip()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.path.join(here, "..", "..", "shared"),
                    help="the shared data folder (default: ../shared beside the checkout)")
    ap.add_argument("--out", default="sample_jobs.jsonl", help="output JSONL (default: %(default)s)")
    ap.add_argument("--chars-per-token", type=float, default=2.0,
                    help="characters per token used to size documents (default: %(default)s)")
    args = ap.parse_args()

    text_dir = os.path.join(args.shared, "text")
    try:
        stories = read_text(os.path.join(text_dir, "tinystories_valid_part1.txt"))
        alice = read_text(os.path.join(text_dir, "alice_in_wonderland.txt"))
    except OSError as e:
        sys.exit(f"make_sample_jobs: {e} (give --shared DIR)")

    cpt = args.chars_per_token
    lines = [
        {"custom_id": "stories-2k", "document": excerpt(stories, 0, int(2000 * cpt))},
        {"custom_id": "stories-4k", "document": excerpt(stories, 50000, int(4000 * cpt))},
        {"custom_id": "alice-6k", "document": excerpt(alice, 0, int(6000 * cpt))},
        {"custom_id": "stories-8k", "document": excerpt(stories, 150000, int(8000 * cpt))},
        {"custom_id": "alice-qa", "task": "qa", "question": "What did Alice see running close by her?",
         "document": excerpt(alice, 0, int(3000 * cpt))},
    ]
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    for line in lines:
        print(f"{line['custom_id']}: {len(line['document'])} characters "
              f"(~{int(len(line['document']) / cpt)} tokens)", file=sys.stderr)
    print(f"wrote {len(lines)} lines to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
