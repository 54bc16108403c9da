"""The study on top of the library: a run directory (rundir), its four stages as functions (prepare, train,
evaluation, analysis; named together in stages, one per notebook), the pipeline that executes the notebooks
(pipeline), results carried between machines (handoff), the tables (tables, markdown), figures (figures) and bin
inspector (inspector); workbook is what each notebook does first."""
