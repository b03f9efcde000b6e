"""The host description machinery: how settings are declared and checked (settings), the core
sections and the Host (schema), TOML loading with every problem at once (loader), and the
generated reference (docs). Which sections exist beyond the core is the feature registry's
business: bootgen.description binds the two."""
