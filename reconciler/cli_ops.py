"""Operations commands (docs, diff, gc) registered on the main CLI group."""
