"""The gap report: where DGL (and DNI, cDNI) stand against backprop, and why, read from the searches' MLflow runs.

    python -m tuner.report [--mlflow-uri URI] [--spaces NAME ...] [--out DIR]

Reads the layout the search driver writes (one parent run per search tagged dt.role=search, one nested child
run per trial tagged dt.role=trial), picks the best trial of each trainer for each model across the selected
experiments (the rule in tuner/ranking.py, the same the search's own summary uses), prints the accuracy/gap
table, writes DIR/report.md and the figures, and logs them as artifacts (under report/) on each selected search's
parent run. Test accuracy is shown only where it was recorded (each search's best trial, once the search ends).

One module per stage, each readable alone:
  store       reading the MLflow store into Search and Trial records
  gaps        the best trial of each model x trainer, and its gap to backprop
  figures     the figures the data allows (curves, blocks, history, importance)
  importance  which hyperparameters mattered, by Optuna's fANOVA
  markdown    the table on the console and report.md
  cli         the command line
"""
