//! Linux sensor of custos: BPF programs written in C (bpf/), compiled by
//! build.rs with clang, loaded with aya from bytes embedded in the binary.
