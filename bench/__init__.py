"""Dockyard's side-by-side benchmark against CNCF Distribution; see bench/README.md."""
