"""t2i-align's benchmarks (bench), evaluations of the fine-tune loop (eval) and operational checks (ops), run
against a built `t2i-align serve` that server.py starts. Each runs as
`python -m t2i_scripts.<package>.<module>` from the repository root."""
