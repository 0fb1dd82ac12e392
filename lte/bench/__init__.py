"""`lte bench`: the grid of cells, their cache, and the reports written from them."""
