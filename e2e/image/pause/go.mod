module eali.dev/e2e/image/pause

go 1.26.0
