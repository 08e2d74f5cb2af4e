"""Transfer evaluation: linear recognition, sweeps over tasks and widths, results, plots."""
