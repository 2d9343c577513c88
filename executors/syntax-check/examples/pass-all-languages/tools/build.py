from pathlib import Path


def sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.ts") if "node_modules" not in p.parts)


if __name__ == "__main__":
    print(len(sources(Path("."))))
