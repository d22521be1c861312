"""Everything MLflow: the trial runs a search writes (trial_runs), the parent runs of searches and studies
(parent_run), what the UI shows (views), reading the store back (reader), and the store itself -- its tags, queries,
URIs and connection (store)."""
