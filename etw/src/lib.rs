//! Windows sensor of custos: ETW kernel providers decoded into custos events.
