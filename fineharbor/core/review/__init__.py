"""Human in the loop: assisted mapping of new sources, review pages, recorded decisions.

- ``propose``: inspect a new source and propose its config block (heuristics, optionally an LLM)
- ``decisions``: ``reviews.yaml`` beside the project file (approve, reject, flag, override)
- ``gate``: which sources may enter a release, and the ``human_flagged`` filter
- ``pages``: a self-contained HTML review page per source
"""
