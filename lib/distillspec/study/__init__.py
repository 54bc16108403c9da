"""The study on top of the library: a run directory (rundir), its four stages as functions (stages, one per
notebook), the pipeline that executes the notebooks (pipeline), results carried between machines (handoff), and
the tables, figures and bin inspector (report); workbook is what each notebook does first."""
