set terminal pngcairo size 960,600 font 'sans,11'
set output '/work/main/bench/results/ppl_stories260K.png'
set title 'Perplexity (all): stories260K-f32.gguf (trained length 512)' noenhanced
set xlabel 'input length (tokens)' noenhanced
set ylabel 'perplexity (log scale)' noenhanced
set grid
set key outside right top noenhanced
set style data linespoints
set logscale x 2
set xtics ("256" 256, "512" 512, "1024" 1024, "2048" 2048, "4096" 4096, "8192" 8192)
set xrange [204.8:10240]
set logscale y
set format y '%g'
set ytics ("2" 2, "5" 5, "10" 10, "20" 20, "50" 50, "100" 100, "200" 200)
set yrange [2.86519:244.802]
set arrow from 512, graph 0 to 512, graph 1 nohead dashtype 2 linecolor rgb 'gray40'
set label 'T = 512' at 512, graph 0.96 offset 0.5,0 textcolor rgb 'gray40' noenhanced
plot '/work/main/bench/results/ppl_stories260K.dat' index 0 using 1:2 title 'full' linewidth 2 pointtype 5 pointsize 1.2, \
     '/work/main/bench/results/ppl_stories260K.dat' index 1 using 1:2 title 'mesa' linewidth 2 pointtype 7 pointsize 1.2, \
     '/work/main/bench/results/ppl_stories260K.dat' index 2 using 1:2 title 'self-extend' linewidth 2 pointtype 9 pointsize 1.2, \
     '/work/main/bench/results/ppl_stories260K.dat' index 3 using 1:2 title 'rerope' linewidth 2 pointtype 11 pointsize 1.2
