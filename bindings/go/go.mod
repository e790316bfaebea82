module xdan

go 1.19
