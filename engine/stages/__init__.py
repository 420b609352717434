"""The Ray stages: embedding store, embed (Ray Data), probe and fine-tune (Ray Tune), halving."""
