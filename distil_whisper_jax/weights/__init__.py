"""Model weights: loading from any source, Orbax checkpoints, student initialisation and the file formats
(``convert/``)."""
