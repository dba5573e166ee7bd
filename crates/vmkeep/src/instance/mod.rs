//! Instances: names, directory layout, config, status.
