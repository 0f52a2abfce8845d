.PHONY: up test build check

up:
	./scripts/up.sh

test:
	./scripts/test.sh

build:
	swift build

check:
	swift build --product tern && .build/debug/tern topology check Topology/*.yaml
