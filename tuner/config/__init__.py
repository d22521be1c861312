"""What a run is asked to do, as plain validated data: one trial's settings (schema), search-space and study files,
and a search's settings. Nothing here imports torch or Ray: a bad file is refused, and `--dry-run` prints its plan,
before either is loaded."""
