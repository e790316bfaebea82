module xdan-generate

go 1.19

require xdan v0.0.0

replace xdan => ../../bindings/go
