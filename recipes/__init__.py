"""The bundled recipes, installed as package data (`taylorcli recipes` lists them)."""
