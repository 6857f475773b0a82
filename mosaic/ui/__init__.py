"""How the commands show things: tables, sizes, progress bars."""
