"""Tokenised corpora as MosaicML Streaming shards, with a stable sample id and domain per sample."""
