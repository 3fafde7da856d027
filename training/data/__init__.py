"""AA reference data: structures, AA MD (OpenMM), importers, the CG map, Term-1 targets and
conditional (frozen-bead) sampling. The only package that opens hessid's HDF5 files."""
