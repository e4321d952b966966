"""Generate the tiny shapes detection dataset: `python data/make_shapes.py datasets/shapes --train 64 --val 16` (add
`--test 16` for a held-out test split)."""

from yolo_attn.data import main

if __name__ == "__main__":
    main()
