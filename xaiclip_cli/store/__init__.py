"""HDF5 feature store: layout, resumable writer (store text/image/merge), reader."""
