"""One module per model family: its checkpoint formats (key-map tables on swinkit.io.keymap), how to tell them
apart, the config the weights imply, and reading / writing files. swinkit.families lists them."""



