"""Curation: topic clusters, complexity levels, balancing, acceptance-rate stats and the HTML report.

Modules have one job each: `cluster` (embeddings -> topics), `labels` (c-TF-IDF topic terms),
`levels` (complexity -> level), `balance` (the stage), `stats` (acceptance rates per topic/level),
`steer` (what the generators read back), `report` (the HTML page).
"""
