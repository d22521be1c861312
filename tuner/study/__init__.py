"""A study: several arms' searches under one budget, then their best configs re-trained with new seeds. `python -m
tuner.study` (__main__) opens it (opening), runs it (driver: the searches, then confirm), reads back what each chose
and measured (results), and writes its tables (tables) and its section of the report (report_section)."""
