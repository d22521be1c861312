"""One search, from its flags to its verdict: opening it (opening), its folder on disk (folder), Ray (ray_cluster),
the Optuna study (optuna_storage) and a warm start (warm_start), the run itself (driver), the console (progress),
and its results put where researchers look (publish). Searches saved before this layout resume through old_layout."""
