"""Quality scores (no Dagster here): the CLIP score of LAION / DanQing (:mod:`.clip_score`; the
demo trains its own small CLIP in :mod:`fineharbor.demo.clip`), and a UniFilter-style
learned quality classifier: an MLP on frozen CLIP features (:mod:`.classifier`) or UniFilter's
published vision tower + AvgPool projector + small LM (:mod:`.mllm_classifier`), trained on texts
at four levels written by rules (:mod:`.perturb`) or by an MLLM (:mod:`.synthetic`).

Import from the submodules: this package stays free of torch imports so the project config can
mount :mod:`.params` cheaply. Typical use (the scoring asset does this per record batch)::

    embedder = load_clip_embedder(params)            # once per process
    scores = clip_scores(batch, embedder, params)    # float32, null without image or text
    train_set = build_quality_training_set(batches, seed=0)
    model = train_quality_classifier(train_set, embedder, QualityClassifierParams())
    quality = score_quality(batch, model, embedder)  # float32 in [0, 3]
"""
