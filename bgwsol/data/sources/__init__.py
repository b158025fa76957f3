"""Readers of datasets in their own layouts (ILSVRC, CUB, wsolevaluation metadata, background folders,
crawled URL lists, the synthetic set) into :class:`~bgwsol.data.sources.records.Sample` lists."""
